"""A small character-level language model in numpy: its weights archive, training and reference
generation. It makes the confidential-inference design concrete; see docs/accelerator.md."""
