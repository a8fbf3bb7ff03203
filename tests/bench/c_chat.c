/* c_chat.c: the bench's limit for chat: a minimal single-threaded C epoll server that
 * speaks scripts/chat.lua's wire format for what the bench uses: a welcome line to a
 * new client, a join line to the others, and every plain-text line a client sends
 * broadcast as {"type":"say","from":NAME,"text":TEXT} to every other client.
 * Output the kernel does not take at once is queued (up to 1 MiB) and sent on EPOLLOUT.
 * Usage: c_chat PORT        (listens on 127.0.0.1) */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define LINE_LIMIT 65536
#define OUT_LIMIT  (1 << 20)

typedef struct client {
    int fd; /* -1: the slot is free */
    char name[24];
    char *in; /* a partial line */
    size_t in_len;
    char *out; /* output the kernel has not taken */
    size_t out_len;
} client;

static client *clients; /* indexed by fd */
static int nclients, ep, guests;

static void watch(int op, int fd, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.fd = fd};
    epoll_ctl(ep, op, fd, &ev);
}

static void drop(client *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in);
    free(c->out);
    memset(c, 0, sizeof *c);
    c->fd = -1;
}

/* Sends now what the kernel takes and queues the rest; drops a client past the limit. */
static void send_to(client *c, const char *data, size_t len)
{
    if (c->out_len == 0) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN) {
            drop(c);
            return;
        }
        n = n < 0 ? 0 : n;
        data += n;
        len -= (size_t)n;
        if (len == 0)
            return;
        watch(EPOLL_CTL_MOD, c->fd, EPOLLIN | EPOLLOUT);
    }
    if (c->out_len + len > OUT_LIMIT) {
        drop(c);
        return;
    }
    c->out = realloc(c->out, c->out_len + len);
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
}

static void flush(client *c)
{
    ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN) {
        drop(c);
        return;
    }
    n = n < 0 ? 0 : n;
    memmove(c->out, c->out + n, c->out_len - (size_t)n);
    c->out_len -= (size_t)n;
    if (c->out_len == 0)
        watch(EPOLL_CTL_MOD, c->fd, EPOLLIN);
}

static void broadcast(const client *except, const char *line, size_t len)
{
    for (int fd = 0; fd < nclients; fd++)
        if (clients[fd].fd >= 0 && &clients[fd] != except)
            send_to(&clients[fd], line, len);
}

/* Appends s to out as a JSON string body; returns the new end. */
static char *json_escape(char *out, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            *out++ = '\\', *out++ = (char)ch;
        else if (ch < 0x20)
            out += sprintf(out, "\\u%04x", ch);
        else
            *out++ = (char)ch;
    }
    return out;
}

static void say(client *c, const char *text, size_t len)
{
    static char line[LINE_LIMIT * 6 + 128];
    char *p = line + sprintf(line, "{\"type\":\"say\",\"from\":\"%s\",\"text\":\"", c->name);
    p = json_escape(p, text, len);
    p += sprintf(p, "\"}\n");
    broadcast(c, line, (size_t)(p - line));
}

static void on_accept(int ls)
{
    int fd;
    char line[128];
    while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
        if (fd >= nclients) {
            int n = fd * 2 + 64;
            clients = realloc(clients, (size_t)n * sizeof *clients);
            for (int i = nclients; i < n; i++)
                memset(&clients[i], 0, sizeof clients[i]), clients[i].fd = -1;
            nclients = n;
        }
        client *c = &clients[fd];
        c->fd = fd;
        snprintf(c->name, sizeof c->name, "guest-%d", ++guests);
        watch(EPOLL_CTL_ADD, fd, EPOLLIN);
        send_to(c, line,
                (size_t)sprintf(line, "{\"type\":\"welcome\",\"name\":\"%s\"}\n", c->name));
        broadcast(c, line, (size_t)sprintf(line, "{\"type\":\"join\",\"name\":\"%s\"}\n", c->name));
    }
}

static void on_readable(client *c)
{
    static char buf[65536];
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EAGAIN)
        return;
    if (n <= 0) {
        char line[128];
        int len =
            sprintf(line, "{\"type\":\"leave\",\"name\":\"%s\",\"reason\":\"quit\"}\n", c->name);
        drop(c);
        broadcast(NULL, line, (size_t)len);
        return;
    }
    c->in = realloc(c->in, c->in_len + (size_t)n);
    memcpy(c->in + c->in_len, buf, (size_t)n);
    c->in_len += (size_t)n;
    size_t start = 0;
    int fd = c->fd;
    for (;;) {
        char *nl = memchr(c->in + start, '\n', c->in_len - start);
        if (!nl)
            break;
        size_t len = (size_t)(nl - (c->in + start));
        if (len && c->in[start + len - 1] == '\r')
            len--;
        if (len)
            say(c, c->in + start, len);
        if (c->fd != fd)
            return; /* dropped while sending to itself is impossible, but stay safe */
        start = (size_t)(nl - c->in) + 1;
    }
    memmove(c->in, c->in + start, c->in_len - start);
    c->in_len -= start;
    if (c->in_len > LINE_LIMIT)
        drop(c);
}

int main(int argc, char **argv)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1;
    if (argc != 2)
        return fprintf(stderr, "usage: c_chat PORT\n"), 2;
    sa.sin_port = htons((uint16_t)atoi(argv[1]));
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 511) < 0)
        return perror("c_chat: listen"), 1;
    ep = epoll_create1(0);
    watch(EPOLL_CTL_ADD, ls, EPOLLIN);
    struct epoll_event evs[512];
    for (;;) {
        int n = epoll_wait(ep, evs, 512, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                on_accept(ls);
                continue;
            }
            if (fd >= nclients || clients[fd].fd < 0)
                continue;
            if (evs[i].events & EPOLLOUT)
                flush(&clients[fd]);
            if (clients[fd].fd >= 0 && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                on_readable(&clients[fd]);
        }
    }
}
