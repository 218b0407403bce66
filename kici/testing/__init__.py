"""Test support shipped with kici: fakes of the ports and their conformance suites."""
