"""Package discovery for setuptools (everything else is in pyproject.toml).

The built-in capabilities live in the top-level ``capabilities/`` folder and install as
``onex_compose.capabilities``; a large capability is a package ``capabilities/<name>/``.
``[tool.setuptools.packages.find]`` cannot rename what it finds, so the packages are found here:
every package of ``onex_compose/`` plus every package of ``capabilities/`` under its installed name.
"""

from setuptools import find_packages, setup

CAPABILITIES = "onex_compose.capabilities"

setup(packages=[
    *find_packages(include=["onex_compose", "onex_compose.*"]),
    CAPABILITIES,
    *(f"{CAPABILITIES}.{name}" for name in find_packages("capabilities")),
])
