/*
 * vsockt: a tiny AF_VSOCK client/server for the StratoVMM vsock guest test.
 * Built static on the host (gcc -static -O2) and handed to the guest on a drive.
 *
 *   vsockt echo PORT OUTFILE      listen on PORT, accept one stream, write what arrives to
 *                                 OUTFILE and echo it back; EOF -> shut down and exit
 *   vsockt send CID PORT IN OUT   connect to CID:PORT, send IN (then shut down writing)
 *                                 while writing everything received to OUT until EOF
 *
 * Prints VSOCKT-... lines on stdout; exit status 0 on success, 2 if connect fails.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define CHUNK 65536

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int echo(unsigned port, const char *outfile)
{
    static char buf[CHUNK];
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
                               .svm_port = port};
    int srv = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (srv < 0 || bind(srv, (struct sockaddr *)&addr, sizeof addr) || listen(srv, 1)) {
        printf("VSOCKT-ERROR listen %u: %s\n", port, strerror(errno));
        return 1;
    }
    printf("VSOCKT-LISTENING %u\n", port);
    fflush(stdout);
    int s = accept(srv, NULL, NULL);
    if (s < 0) {
        printf("VSOCKT-ERROR accept: %s\n", strerror(errno));
        return 1;
    }
    int out = open(outfile, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    unsigned long total = 0;
    for (;;) {
        ssize_t n = read(s, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            printf("VSOCKT-ERROR read: %s\n", strerror(errno));
            return 1;
        }
        if (n == 0)
            break;
        if (write_all(out, buf, (size_t)n) || write_all(s, buf, (size_t)n)) {
            printf("VSOCKT-ERROR write: %s\n", strerror(errno));
            return 1;
        }
        total += (unsigned long)n;
    }
    shutdown(s, SHUT_WR);
    close(out);
    close(s);
    close(srv);
    printf("VSOCKT-ECHOED %lu\n", total);
    return 0;
}

static int send_file(unsigned cid, unsigned port, const char *infile, const char *outfile)
{
    static char inbuf[CHUNK], outbuf[CHUNK];
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
    struct timeval tv = {.tv_sec = 20};
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    setsockopt(s, AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, &tv, sizeof tv);
    if (connect(s, (struct sockaddr *)&addr, sizeof addr)) {
        printf("VSOCKT-CONNECT-FAILED %u:%u errno=%d (%s)\n", cid, port, errno,
               strerror(errno));
        return 2;
    }
    int in = open(infile, O_RDONLY);
    int out = open(outfile, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0) {
        printf("VSOCKT-ERROR open: %s\n", strerror(errno));
        return 1;
    }
    fcntl(s, F_SETFL, fcntl(s, F_GETFL) | O_NONBLOCK);
    size_t have = 0, off = 0;
    int in_eof = 0, sock_eof = 0;
    unsigned long sent = 0, received = 0;
    while (!sock_eof) {
        if (!in_eof && off == have) {
            ssize_t n = read(in, inbuf, sizeof inbuf);
            if (n <= 0) {
                in_eof = 1;
                shutdown(s, SHUT_WR);
            } else {
                have = (size_t)n;
                off = 0;
            }
        }
        struct pollfd p = {.fd = s, .events = POLLIN | (off < have ? POLLOUT : 0)};
        if (poll(&p, 1, 30000) <= 0) {
            printf("VSOCKT-ERROR poll timeout sent=%lu received=%lu\n", sent, received);
            return 1;
        }
        if (p.revents & POLLOUT) {
            ssize_t n = write(s, inbuf + off, have - off);
            if (n > 0) {
                off += (size_t)n;
                sent += (unsigned long)n;
            } else if (n < 0 && errno != EAGAIN) {
                printf("VSOCKT-ERROR send: %s\n", strerror(errno));
                return 1;
            }
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = read(s, outbuf, sizeof outbuf);
            if (n == 0) {
                sock_eof = 1;
            } else if (n > 0) {
                if (write_all(out, outbuf, (size_t)n))
                    return 1;
                received += (unsigned long)n;
            } else if (errno != EAGAIN) {
                printf("VSOCKT-ERROR recv: %s\n", strerror(errno));
                return 1;
            }
        }
    }
    close(out);
    close(s);
    printf("VSOCKT-SENT %lu RECEIVED %lu\n", sent, received);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && !strcmp(argv[1], "echo"))
        return echo((unsigned)strtoul(argv[2], NULL, 10), argv[3]);
    if (argc == 6 && !strcmp(argv[1], "send"))
        return send_file((unsigned)strtoul(argv[2], NULL, 10),
                         (unsigned)strtoul(argv[3], NULL, 10), argv[4], argv[5]);
    fprintf(stderr, "usage: vsockt echo PORT OUTFILE | vsockt send CID PORT INFILE OUTFILE\n");
    return 64;
}
