"""`python -m keras_cxr ...` (what torchrun starts): the `keras-cxr` command line."""

from keras_cxr.cli import main

main(prog_name="keras-cxr")
