"""Training and offline evaluation: `sparsetel train` and `sparsetel evaluate`."""
