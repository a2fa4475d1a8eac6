"""What a model expects as input and gives as output, read from the model itself.

Every consumer (datasets, calibration, evaluation, recovery, fine-tuning, the examples) asks
:func:`input_spec` instead of receiving sizes and modes as separate arguments, so a new model family
needs no change there.
"""

from __future__ import annotations

from torch import nn

from medcore_tp.arch import adapter_for, image_encoder
from medcore_tp.preprocessing import NORMALISATIONS, RESIZE_MODES, InputSpec


def input_spec(model: nn.Module) -> InputSpec:
    """The :class:`InputSpec` of a SAM-style model (dense or pruned, any registered family).

    Sizes come from the model's modules (the encoder's ``img_size``, the prompt encoder's embedding
    grid, which the mask decoder upsamples 4x); resize mode and normalisation are the recipe of the
    encoder family (the adapter's ``RESIZE_MODE`` / ``NORMALISATION``).
    """
    adapter = adapter_for(model)
    size = int(image_encoder(model).img_size)
    low = 4 * int(model.prompt_encoder.image_embedding_size[0])
    return InputSpec(size, low, adapter.RESIZE_MODE, adapter.NORMALISATION)


__all__ = ["NORMALISATIONS", "RESIZE_MODES", "InputSpec", "input_spec"]
