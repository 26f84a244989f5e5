/*
 * redis_server.h - a real redis-server for the unit tests that need one
 * (test_store_redis, test_jobs): started on a free loopback port with no
 * persistence, killed at the end. Header-only: each test binary includes it
 * once, after <cmocka.h>.
 */
#ifndef AISERVE_TEST_REDIS_SERVER_H
#define AISERVE_TEST_REDIS_SERVER_H

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* ---- a real redis-server ------------------------------------------------ */

static pid_t redis_pid;
static int redis_port;

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static int port_answers(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (ok) {
        char buf[16] = {0};
        ok = write(fd, "PING\r\n", 6) == 6 && read(fd, buf, sizeof buf - 1) > 0 && strncmp(buf, "+PONG", 5) == 0;
    }
    close(fd);
    return ok;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void redis_start(void) {
    char port[16];
    snprintf(port, sizeof port, "%d", redis_port);
    char *argv[] = {"redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--loglevel", "warning", NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    assert_int_equal(posix_spawnp(&redis_pid, "redis-server", &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    for (int i = 0; i < 1500 && !port_answers(redis_port); i++)
        sleep_ms(10);
    assert_true(port_answers(redis_port));
}

static void redis_kill(void) {
    kill(redis_pid, SIGKILL);
    waitpid(redis_pid, NULL, 0);
    redis_pid = 0;
}

#endif /* AISERVE_TEST_REDIS_SERVER_H */
