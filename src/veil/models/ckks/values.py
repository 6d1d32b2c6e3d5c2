"""Internal to ``veil.models.ckks``: :class:`EncryptedValues`, the encrypted input or output.

Shared by the generic layouts (:mod:`~veil.models.ckks.infer`) and the taps layout
(:mod:`~veil.models.ckks.lanes`); wire format ``models.encrypted``
(:mod:`veil.protocols.inference`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from veil.errors import SerializationError
from veil.models.ckks.stages import LAYOUTS

__all__ = ["EncryptedValues"]


@dataclass
class EncryptedValues:
    """Encrypted model input or output in one of the two layouts.

    ``tensors``: batched layout, one ``CKKSTensor`` of shape ``(n_samples,)`` per feature;
    single layout, the segments (1-D ``CKKSTensor``) whose concatenation is the flattened
    sample (one segment, or one per output channel after an im2col convolution).
    """

    layout: str
    n_samples: int
    tensors: list[Any]
    windows: int = 0  # im2col windows of an encoded input (0: not im2col)
    outputs: int = 0  # single layout: values per sample to keep (0: all); taps-layout outputs

    @property
    def size(self) -> int:
        """Values per sample."""
        return len(self.tensors) if self.layout == "batched" else sum(t.size for t in self.tensors)

    def serialize(self) -> bytes:
        """Envelope ``models.encrypted``: header plus one ``ckks.tensor`` envelope per tensor."""
        from veil.protocols.inference import KIND_ENCRYPTED, pack_frames

        header = {"layout": self.layout, "n_samples": self.n_samples, "windows": self.windows,
                  "count": len(self.tensors), "outputs": self.outputs}
        return pack_frames(KIND_ENCRYPTED, header, [t.serialize() for t in self.tensors])

    @classmethod
    def load(cls, ctx: Any, data: bytes, *, max_bytes: int = 1 << 30) -> EncryptedValues:
        """Parse :meth:`serialize` output under ``ctx`` (public or secret), checking everything."""
        from veil.protocols.inference import KIND_ENCRYPTED, unpack_frames

        header, frames = unpack_frames(data, KIND_ENCRYPTED, max_bytes=max_bytes)
        try:
            layout, n, windows = header["layout"], header["n_samples"], header["windows"]
            outputs = header.get("outputs", 0)
            ok = (layout in LAYOUTS and isinstance(n, int) and n > 0 and isinstance(windows, int)
                  and windows >= 0 and header["count"] == len(frames) and frames
                  and isinstance(outputs, int) and not isinstance(outputs, bool)
                  and outputs >= 0)
        except KeyError as exc:
            raise SerializationError(f"models.encrypted header lacks {exc}") from exc
        if not ok:
            raise SerializationError(f"models.encrypted: invalid header {header!r}")
        tensors = [ctx.load_tensor(f, max_bytes=max_bytes) for f in frames]
        for t in tensors:
            if len(t.shape) != 1 or (layout == "batched" and t.shape != (n,)):
                raise SerializationError(
                    f"models.encrypted: tensor of shape {t.shape} does not fit layout {layout} "
                    f"with {n} samples"
                )
        if outputs and (layout != "single" or sum(t.size for t in tensors) < outputs):
            raise SerializationError(f"models.encrypted: {outputs} outputs do not fit the tensors")
        return cls(layout, n, tensors, windows, outputs)
