"""The network, its loss, preprocessing and the sliding-window predictor."""
