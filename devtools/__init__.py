"""Tools shared by the tests and the bench: worker processes, the API, the broker."""
