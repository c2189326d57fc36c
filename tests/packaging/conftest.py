"""tests/packaging holds checks of an *installed* package, run by `make test-wheel` from a
fresh venv outside the repository (the Makefile copies the file there). `make test` runs the
SDK from the checkout, where they do not apply, so they are not collected here."""

collect_ignore = ["test_installed_wheel.py", "test_source_build.py"]
