"""The ``vopd`` subcommands: argument parsing and user-facing errors only, the work lives in the packages.

This is the top layer: it may import any package; no package imports it."""
