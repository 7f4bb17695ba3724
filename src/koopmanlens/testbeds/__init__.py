"""Small trained networks whose mechanism is known, to test what a Koopman lens finds."""
