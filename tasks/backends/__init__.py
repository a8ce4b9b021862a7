"""Pretrained-model backends (CLAP, text encoder, codec, ...), selected by params `backends.*`."""
