"""The codec: the SDLGM model, its normalisation, the cloud decoder, the temporal codec and
ONNX export."""
