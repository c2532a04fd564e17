"""Tests of the study harness, nnunet_stipple.benchmarks.study (a package, so that its conftest.py does not take
the module name ``conftest`` that tests elsewhere import tests/conftest.py by)."""
