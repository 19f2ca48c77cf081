"""`sparsetel benchmark`: every codec on the same session split, at matched bit budgets."""
