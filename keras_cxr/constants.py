"""Names every part of keras-cxr agrees on: one source, importable without Keras or torch."""

# Class columns, in this order everywhere (tables, model outputs, probability files).
CLASS_NAMES = ("normal", "bacteria", "virus", "COVID-19")

# The column of a table CSV that names each row's image.
FILENAME_COLUMN = "new_filename"
