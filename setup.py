"""The one packaging setting pyproject.toml cannot express: ``resources/`` installed inside the package.

The repository keeps the desktop app's data files (stylesheet, icon) in the top-level ``resources/``;
the wheel installs them as ``pacs_mask_desktop/resources/`` so the app reads them with
importlib.resources (``pacs_mask_desktop/ui/resources.py``). ``[tool.setuptools.packages.find]`` can
only list folders where they are, so the packages are listed here: the same discovery it did, plus that
one mapped package. Everything else (metadata, dependencies, package data) stays in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

RESOURCES = "pacs_mask_desktop.resources"

setup(
    packages=[
        *find_namespace_packages(include=["pacs_mask_desktop*", "server*"]),
        RESOURCES,
        # its folders (styles/, icons/): setuptools treats every folder as a package
        *(f"{RESOURCES}.{name}" for name in find_namespace_packages(where="resources")),
    ],
    package_dir={RESOURCES: "resources"},
)
