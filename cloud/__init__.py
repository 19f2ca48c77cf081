"""The cloud: data loading, the SDLGM codec and its training, export, evaluation, decoding service."""
