"""Small real datasets used as calibration / test data (read from local files, never downloaded)."""
from .fashion_mnist import FASHION_MNIST_DIR, DatasetMissingError, fashion_mnist_available, load_fashion_mnist

__all__ = ["FASHION_MNIST_DIR", "DatasetMissingError", "fashion_mnist_available", "load_fashion_mnist"]
