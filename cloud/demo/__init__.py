"""`sparsetel demo` and the embedded broker it (and the tests) can run."""
