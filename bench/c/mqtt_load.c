/*
 * mqtt_load: grove-bench's second load client, on libmosquitto (the client library of the
 * mosquitto project), so that the grove/mosquitto ratio does not rest on rumqttc alone.
 *
 * One process runs one phase: N publishers and M subscribers, one libmosquitto client each, all
 * driven by a single thread that polls every socket (libmosquitto's non-threaded API:
 * mosquitto_loop_read / mosquitto_loop_write / mosquitto_loop_misc). No locks, no other thread:
 * the process's CPU time is the clients' work and nothing else.
 *
 * Protocol with grove-bench, one text line per message:
 *
 *   stdin:  phase host=127.0.0.1 port=P id=ID publishers=N subscribers=M qos=0|1 payload=B
 *                 rate=R (0: flat out) messages=K duration_ms=D (one of K, D is 0) limit_ms=L
 *                 window=W protocol=4|5 quiet_ms=Q drain_ms=X setup_ms=S
 *                 [topic=T] [filter=F[,F...]] [dead=F] [sub_qos=0|1] [encoding=binary|json]
 *                 [mode=pubsub|shadow] [things=K]
 *   stdout: ready                      (every subscriber has its SUBACK, every publisher its CONNACK)
 *   stdin:  start
 *   stdout: cpu user_us=U sys_us=S     (getrusage(RUSAGE_SELF) once the phase is over, before the
 *                                       results are written)
 *           pub I sent=N acked=N rejected=N finished_ns=T
 *           sub I received=N foreign=N dead=N last_ns=T|none
 *           d SUB PUB SEQ LATENCY_NS SENT_NS   (one per benchmark delivery; SENT_NS after the start)
 *           done drain_timed_out=0|1
 *   or at any point: error MESSAGE, and exit status 1.
 *
 * Where the messages go (defaults: the broker benchmark's): publisher p publishes to `topic`, in which
 * `{id}` is the phase id and `{p}` the publisher index (default `bench/{id}/{p}`), or to item p of a
 * comma-separated list of topics; every subscriber
 * subscribes to each of the comma-separated `filter`s (default `bench/{id}/#`, `{id}` replaced) at
 * `sub_qos` (default: `qos`), and to `dead` if given, whose messages are counted as `dead` (a
 * function's dead letters). `encoding=json` sends grove-bench's JSON reading instead of the binary
 * header (bench/src/payload.rs: `{"temperature":31.5,"publisher":P,"seq":N,"sent_ns":T}`, T the
 * CLOCK_MONOTONIC send time) and reads those fields back from whatever object arrives (a rule or a
 * function passes them on); `payload` is then unused.
 *
 * `mode=shadow` (no subscribers): each publisher is an AWS IoT Device Shadow client of `things` things
 * of its own (`t{p}x{k}`; 0: one thing, `hot-thing`, shared by all): it subscribes to their
 * `update/accepted` and `update/rejected`, then sends `{"state":{"reported":{"c{p}":N}},
 * "clientToken":"{p}-{N}"}` updates to them in turn at QoS 0, at most `window` unanswered (AWS allows
 * 10 in flight per connection). An answer is matched by its client token: `acked` counts the
 * accepted ones, `rejected` the rejected ones, and each accepted one is a `d` line whose SUB is the
 * publisher itself (latency: publish call to its `update/accepted`).
 *
 * Times T are nanoseconds after the start signal. Payloads carry grove-bench's 24-byte header
 * (bench/src/payload.rs): "GRVB", publisher index (u32 LE), sequence number (u64 LE), send time
 * (u64 LE) = CLOCK_MONOTONIC in ns, whose origin (boot) is system-wide on Linux, so any process
 * reading CLOCK_MONOTONIC can compare against it. The latency is receipt time minus send time.
 *
 * The phase follows bench/src/load.rs: subscribers first (SUBACK), then publishers (CONNACK), a
 * start signal, publishers flat out or message i due at start + i/rate, at most `window` messages
 * not yet written (QoS 0) or acknowledged (QoS 1) per publisher, QoS 1 publishers wait for every
 * PUBACK (at most drain_ms) and then disconnect; then the deliveries still in flight are awaited
 * until all expected arrived, none arrived for quiet_ms, or drain_ms passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>

#define HEADER_LEN 24
/* Room for a JSON reading or a shadow update. */
#define JSON_BUF 160
#define LINE_MAX_LEN 4096
/* Packets read from one socket per wakeup before the others get their turn. */
#define READ_BURST 64
/* Interval of mosquitto_loop_misc (keepalive) calls. */
#define MISC_INTERVAL_NS 500000000ULL
#define KEEPALIVE_S 30

struct params {
    char host[64];
    int port;
    char id[128];
    unsigned publishers;
    unsigned subscribers;
    int qos;
    size_t payload;
    unsigned rate;
    uint64_t messages;
    uint64_t duration_ms;
    uint64_t limit_ms;
    unsigned window;
    int protocol;
    uint64_t quiet_ms;
    uint64_t drain_ms;
    uint64_t setup_ms;
    char topic[1024];
    char filters[512];
    char dead[192];
    int sub_qos;
    bool json;
    bool shadow;
    unsigned things;
};

struct delivery {
    uint32_t publisher;
    uint64_t seq;
    uint64_t latency_ns;
    uint64_t sent_ns; /* absolute CLOCK_MONOTONIC */
};

/* Shadow mode: send times of a client's updates by sequence number modulo this (it keeps at most
 * `window` <= 1000 unanswered, so a slot is never reused while its answer is awaited). */
#define SHADOW_RING 1024

enum role { SUBSCRIBER, PUBLISHER };

struct client {
    struct mosquitto *mosq;
    enum role role;
    unsigned index;
    char client_id[192];
    bool connected;       /* CONNACK accepted and not disconnected since */
    bool ready;           /* subscriber: SUBACK; publisher: CONNACK */
    bool disconnecting;   /* we asked for the DISCONNECT */
    bool closed;          /* socket closed after our DISCONNECT */
    /* publisher */
    char topic[256];
    unsigned char *buf;
    uint64_t seq;         /* messages handed to libmosquitto */
    uint64_t done_count;  /* QoS 0: written to the socket; QoS 1: PUBACK received */
    uint64_t acked;       /* QoS 1 PUBACKs */
    bool publishing_done;
    uint64_t finished_ns; /* absolute CLOCK_MONOTONIC of the last publish call */
    uint64_t acks_deadline;
    uint64_t rejected;    /* shadow: updates answered on update/rejected */
    unsigned subacks;     /* SUBACKs received */
    uint64_t *sent_at;    /* shadow: SHADOW_RING send times */
    /* subscriber (and shadow client) */
    uint64_t received;
    uint64_t foreign;
    uint64_t dead;
    uint64_t last_ns;     /* absolute, 0: none */
    struct delivery *deliveries;
    size_t len, cap;
};

static struct params P;
static struct client *clients;
static unsigned n_clients;
static uint64_t delivered_total;

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t micros(struct timeval tv)
{
    return (uint64_t)tv.tv_sec * UINT64_C(1000000) + (uint64_t)tv.tv_usec;
}

static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    fflush(stdout);
    printf("error %s\n", message);
    fflush(stdout);
    fprintf(stderr, "mqtt_load: %s\n", message);
    exit(1);
}

/* ---- stdin, line by line, without stdio buffering (stdin is also polled) ---- */

static char in_buf[LINE_MAX_LEN];
static size_t in_len;

/* Returns 1 with a line in `line`, 0 at EOF, -1 when no full line is buffered (non-blocking). */
static int take_line(char *line, size_t cap)
{
    char *nl = memchr(in_buf, '\n', in_len);
    if (nl == NULL) {
        return -1;
    }
    size_t n = (size_t)(nl - in_buf);
    if (n >= cap) {
        fail("control line of %zu bytes is too long", n);
    }
    memcpy(line, in_buf, n);
    line[n] = '\0';
    memmove(in_buf, nl + 1, in_len - n - 1);
    in_len -= n + 1;
    return 1;
}

/* Reads what stdin has; returns false at EOF. */
static bool fill_stdin(void)
{
    if (in_len == sizeof in_buf) {
        fail("control line longer than %d bytes", LINE_MAX_LEN);
    }
    ssize_t n = read(STDIN_FILENO, in_buf + in_len, sizeof in_buf - in_len);
    if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) {
            return true;
        }
        fail("reading stdin: %s", strerror(errno));
    }
    if (n == 0) {
        return false;
    }
    in_len += (size_t)n;
    return true;
}

static int read_line_blocking(char *line, size_t cap)
{
    for (;;) {
        int r = take_line(line, cap);
        if (r >= 0) {
            return r;
        }
        if (!fill_stdin()) {
            return 0;
        }
    }
}

/* ---- parameters ---- */

static uint64_t parse_u64(const char *key, const char *value, uint64_t max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(value, &end, 10);
    if (errno != 0 || end == value || *end != '\0' || value[0] == '-' || v > max) {
        fail("bad value `%s` for %s (an integer up to %" PRIu64 ")", value, key, max);
    }
    return (uint64_t)v;
}

static void copy_param(char *to, size_t cap, const char *key, const char *value)
{
    if (strlen(value) == 0 || strlen(value) >= cap) {
        fail("%s must be 1..%zu bytes", key, cap - 1);
    }
    strcpy(to, value);
}

/* Writes `template` with `{id}` replaced by the phase id and `{p}` by `index`. */
static void expand(char *out, size_t cap, const char *template, unsigned index)
{
    size_t n = 0;
    for (const char *t = template; *t != '\0';) {
        char piece[160];
        size_t len;
        if (strncmp(t, "{id}", 4) == 0) {
            len = (size_t)snprintf(piece, sizeof piece, "%s", P.id);
            t += 4;
        } else if (strncmp(t, "{p}", 3) == 0) {
            len = (size_t)snprintf(piece, sizeof piece, "%u", index);
            t += 3;
        } else {
            piece[0] = *t++;
            len = 1;
        }
        if (n + len >= cap) {
            fail("topic `%s` is too long once expanded", template);
        }
        memcpy(out + n, piece, len);
        n += len;
    }
    out[n] = '\0';
}

/* Publisher `index`'s topic: item `index` of a comma-separated `topic` list, or the one template. */
static void publisher_topic(char *out, size_t cap, unsigned index)
{
    if (strchr(P.topic, ',') == NULL) {
        expand(out, cap, P.topic, index);
        return;
    }
    const char *item = P.topic;
    for (unsigned i = 0; i < index; i++) {
        item = strchr(item, ',');
        if (item == NULL) {
            fail("the topic list has fewer than %u topics", P.publishers);
        }
        item++;
    }
    size_t len = strcspn(item, ",");
    if (len == 0 || len >= cap) {
        fail("topic %u of the list is empty or too long", index);
    }
    memcpy(out, item, len);
    out[len] = '\0';
}

static void parse_params(char *line)
{
    char *save = NULL;
    char *word = strtok_r(line, " ", &save);
    if (word == NULL || strcmp(word, "phase") != 0) {
        fail("expected a `phase ...` line first");
    }
    memset(&P, 0, sizeof P);
    P.qos = -1;
    P.protocol = 4;
    P.window = 100;
    P.quiet_ms = 2000;
    P.drain_ms = 30000;
    P.setup_ms = 10000;
    P.limit_ms = 60000;
    P.sub_qos = -1;
    strcpy(P.topic, "bench/{id}/{p}");
    strcpy(P.filters, "bench/{id}/#");
    while ((word = strtok_r(NULL, " ", &save)) != NULL) {
        char *eq = strchr(word, '=');
        if (eq == NULL) {
            fail("expected key=value, got `%s`", word);
        }
        *eq = '\0';
        const char *key = word, *value = eq + 1;
        if (strcmp(key, "host") == 0) {
            if (strlen(value) >= sizeof P.host) {
                fail("host too long");
            }
            strcpy(P.host, value);
        } else if (strcmp(key, "id") == 0) {
            if (strlen(value) == 0 || strlen(value) >= sizeof P.id) {
                fail("phase id must be 1..%zu bytes", sizeof P.id - 1);
            }
            strcpy(P.id, value);
        } else if (strcmp(key, "port") == 0) {
            P.port = (int)parse_u64(key, value, 65535);
        } else if (strcmp(key, "publishers") == 0) {
            P.publishers = (unsigned)parse_u64(key, value, 100000);
        } else if (strcmp(key, "subscribers") == 0) {
            P.subscribers = (unsigned)parse_u64(key, value, 100000);
        } else if (strcmp(key, "qos") == 0) {
            P.qos = (int)parse_u64(key, value, 1);
        } else if (strcmp(key, "payload") == 0) {
            P.payload = (size_t)parse_u64(key, value, 256u * 1024 * 1024);
        } else if (strcmp(key, "rate") == 0) {
            P.rate = (unsigned)parse_u64(key, value, 100000000);
        } else if (strcmp(key, "messages") == 0) {
            P.messages = parse_u64(key, value, UINT64_MAX);
        } else if (strcmp(key, "duration_ms") == 0) {
            P.duration_ms = parse_u64(key, value, UINT64_MAX / 1000000);
        } else if (strcmp(key, "limit_ms") == 0) {
            P.limit_ms = parse_u64(key, value, UINT64_MAX / 1000000);
        } else if (strcmp(key, "window") == 0) {
            P.window = (unsigned)parse_u64(key, value, 65535);
        } else if (strcmp(key, "protocol") == 0) {
            P.protocol = (int)parse_u64(key, value, 5);
        } else if (strcmp(key, "quiet_ms") == 0) {
            P.quiet_ms = parse_u64(key, value, UINT64_MAX / 1000000);
        } else if (strcmp(key, "drain_ms") == 0) {
            P.drain_ms = parse_u64(key, value, UINT64_MAX / 1000000);
        } else if (strcmp(key, "setup_ms") == 0) {
            P.setup_ms = parse_u64(key, value, UINT64_MAX / 1000000);
        } else if (strcmp(key, "topic") == 0) {
            copy_param(P.topic, sizeof P.topic, key, value);
        } else if (strcmp(key, "filter") == 0) {
            copy_param(P.filters, sizeof P.filters, key, value);
        } else if (strcmp(key, "dead") == 0) {
            copy_param(P.dead, sizeof P.dead, key, value);
        } else if (strcmp(key, "sub_qos") == 0) {
            P.sub_qos = (int)parse_u64(key, value, 1);
        } else if (strcmp(key, "encoding") == 0) {
            if (strcmp(value, "json") != 0 && strcmp(value, "binary") != 0) {
                fail("encoding must be binary or json, got `%s`", value);
            }
            P.json = strcmp(value, "json") == 0;
        } else if (strcmp(key, "mode") == 0) {
            if (strcmp(value, "shadow") != 0 && strcmp(value, "pubsub") != 0) {
                fail("mode must be pubsub or shadow, got `%s`", value);
            }
            P.shadow = strcmp(value, "shadow") == 0;
        } else if (strcmp(key, "things") == 0) {
            P.things = (unsigned)parse_u64(key, value, 500);
        } else {
            fail("unknown parameter `%s`", key);
        }
    }
    if (P.host[0] == '\0' || P.port == 0 || P.id[0] == '\0') {
        fail("host, port and id are required");
    }
    if (P.qos < 0) {
        fail("qos is required");
    }
    if (P.sub_qos < 0) {
        P.sub_qos = P.qos;
    }
    if (P.publishers == 0 || (P.subscribers == 0) != P.shadow) {
        fail("publishers must be at least 1, and subscribers too (none in shadow mode)");
    }
    if (P.shadow && P.window > SHADOW_RING - 24) {
        fail("window of %u is too large for shadow mode", P.window);
    }
    if (!P.json && !P.shadow && P.payload < HEADER_LEN) {
        fail("payload of %zu bytes cannot hold the %d-byte header", P.payload, HEADER_LEN);
    }
    if ((P.messages == 0) == (P.duration_ms == 0)) {
        fail("exactly one of messages and duration_ms must be set");
    }
    if (P.protocol != 4 && P.protocol != 5) {
        fail("protocol must be 4 (MQTT 3.1.1) or 5 (MQTT 5)");
    }
    if (P.window == 0) {
        fail("window must be at least 1");
    }
}

/* ---- payload ---- */

static void put_u32_le(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (unsigned char)(v >> (8 * i));
    }
}

static void put_u64_le(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (unsigned char)(v >> (8 * i));
    }
}

static uint32_t get_u32_le(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

static uint64_t get_u64_le(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

/* Reads the unsigned integer after `"key":` in a JSON text of `len` bytes (not NUL-terminated). */
static bool json_u64(const char *text, size_t len, const char *key, uint64_t *out)
{
    char pattern[32];
    int n = snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *at = memmem(text, len, pattern, (size_t)n);
    if (at == NULL) {
        return false;
    }
    const char *end = text + len;
    at += n;
    while (at < end && *at == ' ') {
        at++;
    }
    if (at == end || *at < '0' || *at > '9') {
        return false;
    }
    uint64_t v = 0;
    while (at < end && *at >= '0' && *at <= '9') {
        v = v * 10 + (uint64_t)(*at++ - '0');
    }
    *out = v;
    return true;
}

/* Shadow mode: the name of thing `k` of client `index`. */
static void thing_name(char *out, size_t cap, unsigned index, unsigned k)
{
    if (P.things == 0) {
        snprintf(out, cap, "hot-thing");
    } else {
        snprintf(out, cap, "t%ux%u", index, k);
    }
}

static unsigned thing_count(void)
{
    return P.things == 0 ? 1 : P.things;
}

static void subscribe_to(struct client *c, const char *filter, int qos)
{
    int err = mosquitto_subscribe(c->mosq, NULL, filter, qos);
    if (err != MOSQ_ERR_SUCCESS) {
        fail("client %s: SUBSCRIBE %s failed: %s", c->client_id, filter, mosquitto_strerror(err));
    }
}

/* The SUBACKs a client waits for before it is ready: each of its SUBSCRIBEs is one filter. */
static unsigned expected_subacks(const struct client *c)
{
    if (c->role == PUBLISHER) {
        return P.shadow ? 2 * thing_count() : 0;
    }
    unsigned n = 1;
    for (const char *f = P.filters; *f != '\0'; f++) {
        n += *f == ',';
    }
    return n + (P.dead[0] != '\0');
}

/* ---- callbacks ---- */

static void on_connect(struct mosquitto *mosq, void *obj, int rc)
{
    struct client *c = obj;
    (void)mosq;
    if (rc != 0) {
        fail("client %s: connection refused: %s", c->client_id, mosquitto_connack_string(rc));
    }
    c->connected = true;
    if (c->role == SUBSCRIBER) {
        char filters[sizeof P.filters], filter[256];
        strcpy(filters, P.filters);
        char *save = NULL;
        for (char *f = strtok_r(filters, ",", &save); f != NULL; f = strtok_r(NULL, ",", &save)) {
            expand(filter, sizeof filter, f, c->index);
            subscribe_to(c, filter, P.sub_qos);
        }
        if (P.dead[0] != '\0') {
            subscribe_to(c, P.dead, P.sub_qos);
        }
    } else if (P.shadow) {
        for (unsigned k = 0; k < thing_count(); k++) {
            char thing[64], filter[160];
            thing_name(thing, sizeof thing, c->index, k);
            snprintf(filter, sizeof filter, "$aws/things/%s/shadow/update/accepted", thing);
            subscribe_to(c, filter, 0);
            snprintf(filter, sizeof filter, "$aws/things/%s/shadow/update/rejected", thing);
            subscribe_to(c, filter, 0);
        }
    } else {
        c->ready = true;
    }
}

static void on_subscribe(struct mosquitto *mosq, void *obj, int mid, int count, const int *granted)
{
    struct client *c = obj;
    (void)mosq;
    (void)mid;
    if (count < 1 || granted[0] > 2) {
        fail("client %s: subscription refused (SUBACK code %d)", c->client_id,
             count < 1 ? -1 : granted[0]);
    }
    c->subacks++;
    c->ready = c->subacks >= expected_subacks(c);
}

static void on_publish(struct mosquitto *mosq, void *obj, int mid)
{
    struct client *c = obj;
    (void)mosq;
    (void)mid;
    /* A shadow client's window is its unanswered updates (see shadow_answer). */
    if (P.shadow) {
        return;
    }
    c->done_count++;
    if (P.qos == 1) {
        c->acked++;
    }
}

static void record(struct client *c, uint32_t publisher, uint64_t seq, uint64_t sent, uint64_t now)
{
    if (c->len == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 4096;
        struct delivery *d = realloc(c->deliveries, cap * sizeof *d);
        if (d == NULL) {
            fail("out of memory for %zu deliveries", cap);
        }
        c->deliveries = d;
        c->cap = cap;
    }
    struct delivery *d = &c->deliveries[c->len++];
    d->publisher = publisher;
    d->seq = seq;
    d->sent_ns = sent;
    d->latency_ns = now > sent ? now - sent : 0;
}

/* Shadow mode: an answer on update/accepted or update/rejected, matched by its client token. */
static void shadow_answer(struct client *c, const struct mosquitto_message *m, uint64_t now)
{
    static const char key[] = "\"clientToken\":\"";
    size_t topic_len = strlen(m->topic);
    bool accepted = topic_len > 9 && strcmp(m->topic + topic_len - 9, "/accepted") == 0;
    const char *text = m->payload;
    size_t len = (size_t)m->payloadlen;
    const char *at = memmem(text, len, key, sizeof key - 1);
    unsigned index;
    unsigned long long seq;
    char token[48];
    size_t left = at == NULL ? 0 : len - (size_t)(at - text) - (sizeof key - 1);
    if (at == NULL || left == 0) {
        c->foreign++;
        return;
    }
    size_t n = left < sizeof token - 1 ? left : sizeof token - 1;
    memcpy(token, at + sizeof key - 1, n);
    token[n] = '\0';
    if (sscanf(token, "%u-%llu\"", &index, &seq) != 2) {
        c->foreign++;
        return;
    }
    if (index != c->index) {
        return; /* another client's answer on a thing they share */
    }
    if (seq >= c->seq || c->done_count >= c->seq) {
        c->foreign++;
        return;
    }
    c->received++;
    c->last_ns = now;
    c->done_count++;
    if (accepted) {
        c->acked++;
        record(c, index, seq, c->sent_at[seq % SHADOW_RING], now);
    } else {
        c->rejected++;
    }
}

static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *m)
{
    struct client *c = obj;
    uint64_t now = mono_ns();
    (void)mosq;
    if (P.shadow) {
        shadow_answer(c, m, now);
        return;
    }
    c->received++;
    c->last_ns = now;
    delivered_total++;
    bool dead = false;
    if (P.dead[0] != '\0' && mosquitto_topic_matches_sub(P.dead, m->topic, &dead) == MOSQ_ERR_SUCCESS &&
        dead) {
        c->dead++;
        return;
    }
    const unsigned char *p = m->payload;
    size_t len = (size_t)m->payloadlen;
    uint64_t publisher, seq, sent;
    if (P.json) {
        if (!json_u64((const char *)p, len, "publisher", &publisher) ||
            !json_u64((const char *)p, len, "seq", &seq) ||
            !json_u64((const char *)p, len, "sent_ns", &sent) || publisher > UINT32_MAX) {
            c->foreign++;
            return;
        }
    } else {
        if (len < HEADER_LEN || memcmp(p, "GRVB", 4) != 0) {
            c->foreign++;
            return;
        }
        publisher = get_u32_le(p + 4);
        seq = get_u64_le(p + 8);
        sent = get_u64_le(p + 16);
    }
    record(c, (uint32_t)publisher, seq, sent, now);
}

static void on_disconnect(struct mosquitto *mosq, void *obj, int rc)
{
    struct client *c = obj;
    (void)mosq;
    c->connected = false;
    if (c->disconnecting) {
        c->closed = true;
        return;
    }
    fail("client %s lost its connection: %s", c->client_id,
         rc == MOSQ_ERR_CONN_LOST ? "connection lost" : mosquitto_strerror(rc));
}

/* ---- clients ---- */

static void connect_client(struct client *c)
{
    c->mosq = mosquitto_new(c->client_id, true, c);
    if (c->mosq == NULL) {
        fail("client %s: mosquitto_new failed: %s", c->client_id, strerror(errno));
    }
    mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION,
                         P.protocol == 5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311);
    /* QoS 1 in-flight window: the same as the publisher's own window, so that libmosquitto never
     * holds a message back in its queue (rumqttc's in-flight limit is 100 too). */
    mosquitto_int_option(c->mosq, MOSQ_OPT_SEND_MAXIMUM, (int)P.window);
    mosquitto_int_option(c->mosq, MOSQ_OPT_TCP_NODELAY, 1);
    mosquitto_connect_callback_set(c->mosq, on_connect);
    mosquitto_disconnect_callback_set(c->mosq, on_disconnect);
    mosquitto_subscribe_callback_set(c->mosq, on_subscribe);
    mosquitto_publish_callback_set(c->mosq, on_publish);
    mosquitto_message_callback_set(c->mosq, on_message);
    int err = mosquitto_connect(c->mosq, P.host, P.port, KEEPALIVE_S);
    if (err != MOSQ_ERR_SUCCESS) {
        fail("client %s cannot connect to %s:%d: %s", c->client_id, P.host, P.port,
             err == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(err));
    }
}

static void check(struct client *c, int err, const char *what)
{
    if (err == MOSQ_ERR_SUCCESS) {
        return;
    }
    if (c->disconnecting && (err == MOSQ_ERR_NO_CONN || err == MOSQ_ERR_CONN_LOST)) {
        c->connected = false;
        c->closed = true;
        return;
    }
    fail("client %s: %s: %s", c->client_id, what,
         err == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(err));
}

static void start_disconnect(struct client *c)
{
    if (c->disconnecting) {
        return;
    }
    c->disconnecting = true;
    int err = mosquitto_disconnect(c->mosq);
    if (err == MOSQ_ERR_NO_CONN) {
        c->closed = true;
        return;
    }
    check(c, err, "DISCONNECT");
}

/* Publishes message `c->seq` of a publisher: the binary header, a JSON reading, or a shadow update. */
static void send_one(struct client *c)
{
    uint64_t stamp = mono_ns();
    const char *topic = c->topic;
    char shadow_topic[160];
    int len = (int)P.payload;
    if (P.shadow) {
        char thing[64];
        thing_name(thing, sizeof thing, c->index, (unsigned)(c->seq % thing_count()));
        snprintf(shadow_topic, sizeof shadow_topic, "$aws/things/%s/shadow/update", thing);
        topic = shadow_topic;
        len = snprintf((char *)c->buf, JSON_BUF,
                       "{\"state\":{\"reported\":{\"c%u\":%" PRIu64 "}},\"clientToken\":\"%u-%" PRIu64
                       "\"}",
                       c->index, c->seq, c->index, c->seq);
        c->sent_at[c->seq % SHADOW_RING] = stamp;
    } else if (P.json) {
        len = snprintf((char *)c->buf, JSON_BUF,
                       "{\"temperature\":31.5,\"publisher\":%u,\"seq\":%" PRIu64 ",\"sent_ns\":%" PRIu64
                       "}",
                       c->index, c->seq, stamp);
    } else {
        put_u32_le(c->buf + 4, c->index);
        put_u64_le(c->buf + 8, c->seq);
        put_u64_le(c->buf + 16, stamp);
    }
    int err = mosquitto_publish(c->mosq, NULL, topic, len, c->buf, P.qos, false);
    check(c, err, "PUBLISH");
}

/* Publishes what is due and fits in the window; returns the earliest future due time (0: none). */
static uint64_t publish_due(struct client *c, uint64_t start, uint64_t now)
{
    uint64_t limit = start + P.limit_ms * 1000000ULL;
    uint64_t sent_in_burst = 0;
    while (!c->publishing_done) {
        bool stop = P.messages ? c->seq >= P.messages : now >= start + P.duration_ms * 1000000ULL;
        if (stop || now >= limit) {
            c->publishing_done = true;
            c->acks_deadline = now + P.drain_ms * 1000000ULL;
            if (c->finished_ns == 0) {
                c->finished_ns = now;
            }
            break;
        }
        if (P.rate > 0) {
            uint64_t due = start + (uint64_t)((double)c->seq * 1e9 / (double)P.rate);
            if (due > now) {
                return due;
            }
        }
        if (c->seq - c->done_count >= P.window || sent_in_burst >= P.window) {
            break;
        }
        send_one(c);
        c->seq++;
        c->finished_ns = mono_ns();
        sent_in_burst++;
        now = c->finished_ns;
    }
    return 0;
}

/* Reads what a socket has, a few packets at a time (libmosquitto reads one packet per call). */
static void read_client(struct client *c)
{
    for (int i = 0; i < READ_BURST; i++) {
        int err = mosquitto_loop_read(c->mosq, 1);
        if (err != MOSQ_ERR_SUCCESS) {
            check(c, err, "reading");
            return;
        }
        int fd = mosquitto_socket(c->mosq);
        int pending = 0;
        if (fd < 0 || ioctl(fd, FIONREAD, &pending) != 0 || pending <= 0) {
            return;
        }
    }
}

enum stage { SUBSCRIBING, CONNECTING, WAITING, RUNNING, DRAINING, CLOSING, FINISHED };

static struct pollfd *fds;
static struct client **fd_client;

static void poll_once(uint64_t deadline, bool watch_stdin, bool *stdin_ready)
{
    unsigned n = 0;
    for (unsigned i = 0; i < n_clients; i++) {
        struct client *c = &clients[i];
        int fd = mosquitto_socket(c->mosq);
        if (fd < 0) {
            continue;
        }
        fds[n].fd = fd;
        fds[n].events = POLLIN | (mosquitto_want_write(c->mosq) ? POLLOUT : 0);
        fds[n].revents = 0;
        fd_client[n] = c;
        n++;
    }
    unsigned stdin_slot = n;
    if (watch_stdin) {
        fds[n].fd = STDIN_FILENO;
        fds[n].events = POLLIN;
        fds[n].revents = 0;
        n++;
    }
    uint64_t now = mono_ns();
    uint64_t wait = deadline > now ? deadline - now : 0;
    struct timespec ts = {(time_t)(wait / 1000000000ULL), (long)(wait % 1000000000ULL)};
    int r = ppoll(fds, n, &ts, NULL);
    if (r < 0) {
        if (errno == EINTR) {
            return;
        }
        fail("poll: %s", strerror(errno));
    }
    for (unsigned i = 0; i < stdin_slot && r > 0; i++) {
        struct client *c = fd_client[i];
        short ev = fds[i].revents;
        if (ev & (POLLIN | POLLERR | POLLHUP)) {
            read_client(c);
        }
        if ((ev & POLLOUT) && mosquitto_socket(c->mosq) >= 0) {
            check(c, mosquitto_loop_write(c->mosq, 1), "writing");
        }
    }
    if (watch_stdin && (fds[stdin_slot].revents & (POLLIN | POLLHUP | POLLERR))) {
        *stdin_ready = true;
    }
}

static void misc_all(void)
{
    for (unsigned i = 0; i < n_clients; i++) {
        struct client *c = &clients[i];
        if (mosquitto_socket(c->mosq) >= 0) {
            int err = mosquitto_loop_misc(c->mosq);
            if (err != MOSQ_ERR_SUCCESS && !c->disconnecting) {
                check(c, err, "keepalive");
            }
        }
    }
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    static char out_buf[1 << 20];
    setvbuf(stdout, out_buf, _IOFBF, sizeof out_buf);

    char line[LINE_MAX_LEN];
    if (read_line_blocking(line, sizeof line) != 1) {
        fail("no `phase` line on stdin");
    }
    parse_params(line);
    int lib = mosquitto_lib_init();
    if (lib != MOSQ_ERR_SUCCESS) {
        fail("mosquitto_lib_init: %s", mosquitto_strerror(lib));
    }

    n_clients = P.subscribers + P.publishers;
    clients = calloc(n_clients, sizeof *clients);
    fds = calloc(n_clients + 1, sizeof *fds);
    fd_client = calloc(n_clients + 1, sizeof *fd_client);
    if (clients == NULL || fds == NULL || fd_client == NULL) {
        fail("out of memory for %u clients", n_clients);
    }
    struct client *subs = clients, *pubs = clients + P.subscribers;
    for (unsigned i = 0; i < P.subscribers; i++) {
        subs[i].role = SUBSCRIBER;
        subs[i].index = i;
        snprintf(subs[i].client_id, sizeof subs[i].client_id, "gb-%s-s%u", P.id, i);
    }
    for (unsigned i = 0; i < P.publishers; i++) {
        struct client *c = &pubs[i];
        c->role = PUBLISHER;
        c->index = i;
        snprintf(c->client_id, sizeof c->client_id, "gb-%s-p%u", P.id, i);
        publisher_topic(c->topic, sizeof c->topic, i);
        size_t size = P.json || P.shadow ? JSON_BUF : P.payload;
        c->buf = calloc(1, size);
        if (c->buf == NULL) {
            fail("out of memory for a %zu-byte payload", size);
        }
        memcpy(c->buf, "GRVB", 4);
        if (P.shadow) {
            c->sent_at = calloc(SHADOW_RING, sizeof *c->sent_at);
            if (c->sent_at == NULL) {
                fail("out of memory for send times");
            }
        }
    }

    /* Subscribers first; publishers once every SUBACK is in (as in load.rs). */
    uint64_t setup_deadline = mono_ns() + P.setup_ms * 1000000ULL;
    for (unsigned i = 0; i < P.subscribers; i++) {
        connect_client(&subs[i]);
    }
    enum stage stage = SUBSCRIBING;
    uint64_t start = 0, drain_start = 0, last_progress = 0, last_count = 0, next_misc = 0;
    uint64_t close_deadline = 0;
    bool drain_timed_out = false;
    uint64_t total_sent = 0;

    while (stage != FINISHED) {
        uint64_t now = mono_ns();
        uint64_t deadline = now + MISC_INTERVAL_NS;
        bool stdin_ready = false;
        if (now >= next_misc) {
            misc_all();
            next_misc = now + MISC_INTERVAL_NS;
        }
        switch (stage) {
        case SUBSCRIBING:
        case CONNECTING: {
            if (now >= setup_deadline) {
                fail("%s did not happen within %" PRIu64 " ms",
                     stage == SUBSCRIBING ? "SUBACK for every subscriber"
                                          : "CONNACK (shadow mode: and SUBACKs) for every publisher",
                     P.setup_ms);
            }
            struct client *group = stage == SUBSCRIBING ? subs : pubs;
            unsigned count = stage == SUBSCRIBING ? P.subscribers : P.publishers;
            unsigned ready = 0;
            for (unsigned i = 0; i < count; i++) {
                ready += group[i].ready;
            }
            if (ready == count && stage == SUBSCRIBING) {
                for (unsigned i = 0; i < P.publishers; i++) {
                    connect_client(&pubs[i]);
                }
                stage = CONNECTING;
                continue;
            }
            if (ready == count) {
                printf("ready\n");
                fflush(stdout);
                stage = WAITING;
                continue;
            }
            if (deadline > setup_deadline) {
                deadline = setup_deadline;
            }
            break;
        }
        case WAITING:
            break;
        case RUNNING: {
            bool all_closed = true;
            for (unsigned i = 0; i < P.publishers; i++) {
                struct client *c = &pubs[i];
                if (!c->publishing_done) {
                    uint64_t due = publish_due(c, start, now);
                    now = mono_ns();
                    if (due != 0 && due < deadline) {
                        deadline = due;
                    }
                    if (!c->publishing_done && due == 0 && c->seq - c->done_count < P.window) {
                        deadline = now; /* more to send at once: just look at the sockets */
                    }
                    if (P.duration_ms && !c->publishing_done) {
                        uint64_t end = start + P.duration_ms * 1000000ULL;
                        if (end < deadline) {
                            deadline = end;
                        }
                    }
                }
                if (c->publishing_done && !c->disconnecting) {
                    /* QoS 1: every PUBACK (bounded); QoS 0: every message written. */
                    if (c->done_count >= c->seq || now >= c->acks_deadline) {
                        start_disconnect(c);
                    } else if (c->acks_deadline < deadline) {
                        deadline = c->acks_deadline;
                    }
                }
                if (!c->closed) {
                    all_closed = false;
                }
            }
            if (all_closed) {
                for (unsigned i = 0; i < P.publishers; i++) {
                    total_sent += pubs[i].seq;
                }
                stage = DRAINING;
                drain_start = last_progress = now;
                last_count = delivered_total;
                continue;
            }
            break;
        }
        case DRAINING: {
            uint64_t expected = total_sent * P.subscribers;
            if (delivered_total != last_count) {
                last_count = delivered_total;
                last_progress = now;
            }
            bool timed_out = now >= drain_start + P.drain_ms * 1000000ULL;
            if (delivered_total >= expected || now >= last_progress + P.quiet_ms * 1000000ULL ||
                timed_out) {
                drain_timed_out = timed_out && delivered_total < expected &&
                                  now < last_progress + P.quiet_ms * 1000000ULL;
                for (unsigned i = 0; i < P.subscribers; i++) {
                    start_disconnect(&subs[i]);
                }
                stage = CLOSING;
                close_deadline = now + 1000000000ULL;
                continue;
            }
            uint64_t quiet_end = last_progress + P.quiet_ms * 1000000ULL;
            if (quiet_end < deadline) {
                deadline = quiet_end;
            }
            break;
        }
        case CLOSING: {
            bool all_closed = true;
            for (unsigned i = 0; i < P.subscribers; i++) {
                all_closed = all_closed && subs[i].closed;
            }
            if (all_closed || now >= close_deadline) {
                stage = FINISHED;
                continue;
            }
            if (close_deadline < deadline) {
                deadline = close_deadline;
            }
            break;
        }
        case FINISHED:
            break;
        }

        poll_once(deadline, stage == WAITING, &stdin_ready);
        if (stdin_ready) {
            if (!fill_stdin()) {
                fail("stdin closed before the start signal");
            }
            int r = take_line(line, sizeof line);
            if (r == 1) {
                if (strcmp(line, "start") != 0) {
                    fail("expected `start`, got `%s`", line);
                }
                stage = RUNNING;
                start = mono_ns();
            }
        }
    }

    /* The phase is over: its CPU time first, so writing the results is not counted. */
    struct rusage usage;
    if (getrusage(RUSAGE_SELF, &usage) != 0) {
        fail("getrusage: %s", strerror(errno));
    }
    printf("cpu user_us=%" PRIu64 " sys_us=%" PRIu64 "\n", micros(usage.ru_utime),
           micros(usage.ru_stime));
    for (unsigned i = 0; i < P.publishers; i++) {
        struct client *c = &pubs[i];
        uint64_t finished = c->finished_ns > start ? c->finished_ns - start : 0;
        printf("pub %u sent=%" PRIu64 " acked=%" PRIu64 " rejected=%" PRIu64 " finished_ns=%" PRIu64
               "\n",
               i, c->seq, c->acked, c->rejected, finished);
    }
    /* The receivers: the subscribers, or in shadow mode each client, which receives its answers. */
    struct client *receivers = P.shadow ? pubs : subs;
    unsigned n_receivers = P.shadow ? P.publishers : P.subscribers;
    for (unsigned i = 0; i < n_receivers; i++) {
        struct client *c = &receivers[i];
        printf("sub %u received=%" PRIu64 " foreign=%" PRIu64 " dead=%" PRIu64, i, c->received,
               c->foreign, c->dead);
        if (c->last_ns != 0) {
            printf(" last_ns=%" PRIu64 "\n", c->last_ns > start ? c->last_ns - start : 0);
        } else {
            printf(" last_ns=none\n");
        }
    }
    /* Deliveries: the subscribers', or in shadow mode each client's accepted answers. */
    for (unsigned i = 0; i < n_receivers; i++) {
        struct client *c = &receivers[i];
        for (size_t k = 0; k < c->len; k++) {
            const struct delivery *d = &c->deliveries[k];
            printf("d %u %" PRIu32 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", i, d->publisher, d->seq,
                   d->latency_ns, d->sent_ns > start ? d->sent_ns - start : 0);
        }
    }
    printf("done drain_timed_out=%d\n", drain_timed_out ? 1 : 0);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "mqtt_load: writing the results: %s\n", strerror(errno));
        return 1;
    }
    for (unsigned i = 0; i < n_clients; i++) {
        mosquitto_destroy(clients[i].mosq);
    }
    mosquitto_lib_cleanup();
    return 0;
}
