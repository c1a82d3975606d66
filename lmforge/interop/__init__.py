"""Other tools' formats: Hugging Face ``transformers`` export and import (config mapping,
weight mapping, tokenizer files).

May import ``config``, ``checkpoint``, ``data.tokenizer`` and the top-level modules."""
