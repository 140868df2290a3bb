"""Test-wide fixtures. Real servers only: see tests/support/."""

pytest_plugins = [
    "tests.support.services",
    "tests.support.schema",
    "tests.support.kube",
    "tests.support.node",
]
