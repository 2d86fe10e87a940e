"""The host process around the VM: services every other part may use.

``eventloop`` (the epoll loop and I/O threads), ``daemon`` (``-daemonize``,
``-pidfile``), ``logsetup`` (``-D`` and the log level), ``sandbox`` and its
C SIGSYS reporter built by ``_sandbox_build`` (the seccomp filter; which
plugins add rules is ``stratovmm.machine.seccomp``'s choice),
``threadname`` (kernel-visible thread names) and ``unixsock`` (the one
unix-socket listener: QMP, console and vsock).
"""
