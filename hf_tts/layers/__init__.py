"""Building blocks shared by the models (adaLN-Zero, rotary, ConvNeXt, attention, RVQ, ...)."""
