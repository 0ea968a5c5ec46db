"""Sphinx configuration of the pyro-adv documentation (``make docs``)."""

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "docs", "_ext"))
os.environ.setdefault("MPLBACKEND", "Agg")

import pyro_adv  # noqa: E402

project = "pyro-adv"
author = "the pyro-adv developers"
copyright = "the pyro-adv developers"
version = release = pyro_adv.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    # MathJax served from _static: the pages render their math without a network
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "myst_parser",
    "pyro_adv_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "tutorials/_generated"]
templates_path = []

# autodoc: the docstrings are reST with :param: fields, as in Pyro
autodoc_member_order = "bysource"
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "description"
autoclass_content = "class"

# no network during the build (CI and these machines have none): intersphinx inventories
# are only used when present locally, so cross-references to torch/pyro stay plain text
intersphinx_mapping = {}

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"pyro-adv {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False
