"""Pieces shared by every model family: audio decoding, the transcript model, formats, errors, config."""
