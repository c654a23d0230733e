"""Opening a sentencepiece ``.model`` file, checked: the training tokenizer plugin and the ONNX engine
(which imports no torch) read the same file the same way, and neither shows sentencepiece's own error."""
from __future__ import annotations

from pathlib import Path

from nmt.errors import UserError

SPECIAL_IDS = (0, 1, 2, 3)  # pad, unk, bos, eos: nmt.data.tokenizer's PAD_ID, UNK_ID, BOS_ID, EOS_ID


def open_sentencepiece(path: Path, error: type[UserError], advice: str):
    """The ``SentencePieceProcessor`` of ``path``, or ``error(path, ...)`` in one line ending in ``advice``:
    missing, empty, not a model (truncated, corrupt, another file), or special ids other than nmt's."""
    import sentencepiece as spm

    if not path.is_file():
        raise error(str(path), f"sentencepiece model not found; {advice}")
    try:
        processor = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as exc:  # sentencepiece says "INTERNAL: could not parse ModelProto ..."
        reason = "empty file" if path.stat().st_size == 0 else str(exc).splitlines()[0].removeprefix("INTERNAL: ")[:100]
        raise error(str(path), f"not a sentencepiece model, truncated or corrupt ({reason}); {advice}") from None
    found = (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id())
    if found != SPECIAL_IDS:  # a model trained outside nmt may put the specials elsewhere; ids would silently clash
        raise error(str(path), f"special ids (pad, unk, bos, eos) are {found}, expected {SPECIAL_IDS}")
    return processor
