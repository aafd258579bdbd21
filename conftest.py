"""Repository-wide pytest setup: notebooks (run by nbmake in their own kernels, which
inherit this environment) execute at small size unless METAJAX_SMALL is already set."""
import os

os.environ.setdefault("METAJAX_SMALL", "1")
