"""Fuzz targets for the request body parser and the image URL validator (RELIABILITY 20)."""
