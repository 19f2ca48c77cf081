"""The cloud: data loading, the SDLGM codec, training, export, evaluation, decoder service."""
