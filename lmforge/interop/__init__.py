"""Other tools' formats: Hugging Face ``transformers`` GPT-2 directories in and out.

- ``hf_config``: lmforge's ``ModelConfig`` <-> HF's GPT-2 ``config.json``
- ``hf_weights``: state-dict mapping (Conv1D transposes, tied head, zero biases) and
  safe loading of safetensors / ``pytorch_model.bin`` weights
- ``hf_tokenizer``: tiktoken ranks <-> ``vocab.json`` + ``merges.txt``
- ``hf_export``: ``ckpt export`` (``hf`` and ``safetensors`` formats)
- ``hf_import``: ``ckpt import`` (a directory becomes a run with one checkpoint)

``transformers`` itself is never imported: its files are written and read directly.

May import ``config``, ``model``, ``checkpoint``, ``data.tokenizer``, ``runs.record`` and the
top-level modules; not the trainer or the CLI."""
