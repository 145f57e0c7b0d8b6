"""The data layer: reading text, tokenizing and packing it, and the three sources of training examples (in memory,
streamed, prepared); sources.prepare_datasets is the front door."""
