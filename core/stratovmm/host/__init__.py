"""The host process around the VM.

``eventloop`` (the epoll loop and I/O threads), ``daemon`` (``-daemonize``,
``-pidfile``), ``logsetup`` (``-D`` and the log level), ``sandbox`` and its
C SIGSYS reporter built by ``_sandbox_build`` (the seccomp filter),
``threadname`` (kernel-visible thread names) and ``unixsock`` (owner-only
listening sockets).
"""
