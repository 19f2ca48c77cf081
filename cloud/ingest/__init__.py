"""The decoder service, `sparsetel serve`: MQTT frames in; stored KPIs, predictions and
receipts out."""
