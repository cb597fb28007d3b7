"""Methods that exist only for the test suite: they show that a method is one folder."""
