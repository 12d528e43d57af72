"""ActiveSegLib: the Slicer module's library, importable without the Slicer application.

Submodules:
    errors: typed exceptions (:class:`MrmlBridgeError`, :class:`BackendStartError`, :class:`ClientError` and its
        subclasses).
    client: stdlib HTTP client of the backend's ``/v1`` API (:class:`~ActiveSegLib.client.ActiveSegClient`).
    logic: the module's Logic without GUI (needs ``slicer`` MRML classes): connect, queue, next case, submit,
        retrain, review.
    fileformats: stdlib checks of NRRD/NIfTI bytes before MRML reads them.
    mrml: image/label files <-> MRML nodes (needs ``slicer`` MRML classes, numpy, vtk).
    launcher: start/stop a local ``activeseg serve`` process (stdlib only).
    worker: run blocking calls off the main thread, deliver results on it (stdlib only).

``mrml`` and ``logic`` are not imported here, so ``client``, ``launcher`` and ``worker`` stay usable where
``slicer`` is absent.
"""

from .errors import (
    ActiveSegModuleError,
    AuthenticationError,
    BackendRequestError,
    BackendStartError,
    BackendUnavailableError,
    ClientError,
    MrmlBridgeError,
    ProtocolError,
)

__all__ = [
    "ActiveSegModuleError",
    "AuthenticationError",
    "BackendRequestError",
    "BackendStartError",
    "BackendUnavailableError",
    "ClientError",
    "MrmlBridgeError",
    "ProtocolError",
]
