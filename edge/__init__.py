"""The edge agent: measurement sources, the ONNX encoder, the MQTT publisher.

Never imports torch or pandas.
"""
