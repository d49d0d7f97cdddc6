"""Builds geometry._native with ordinary debug flags; GEOMETRY_GCOV=1 adds gcov's
instrumentation (the oracle build, never the one bpfcov measures)."""

import os

from setuptools import Extension, setup

gcov = ["--coverage"] if os.environ.get("GEOMETRY_GCOV") == "1" else []
setup(name="geometry", version="1.0", packages=["geometry"],
      ext_modules=[Extension("geometry._native", ["geometry/_native.c"],
                             extra_compile_args=["-O0", "-g", *gcov], extra_link_args=gcov)])
