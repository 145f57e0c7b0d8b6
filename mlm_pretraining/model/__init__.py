"""The model layer: loading the tokenizer and model, extending the vocabulary, warming up a new head, keeping the
base weights masked-LM does not use."""
