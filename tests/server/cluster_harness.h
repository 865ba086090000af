/* Several machines on one PostgreSQL, played by processes on this one (issue 14): API nodes are
 * `mpass serve --workers 0` (server_harness.h), workers are `mpass worker`, each with a DATA folder
 * of its own so that nothing but the database is shared. Included by tests/server/test_cluster*.c. */
#ifndef MP_TEST_CLUSTER_HARNESS_H
#define MP_TEST_CLUSTER_HARNESS_H

/* each cluster test uses part of the harnesses' static helpers */
#pragma GCC diagnostic ignored "-Wunused-function"
#include "server_harness.h"

typedef struct {
  pid_t pid;
  char *data, *log;
} worker;

/* `mpass worker` on the API node's database with its own DATA; lease in seconds */
static void c_worker_start(worker *w, const server *api, int index, int lease) {
  const char *bin_dir = getenv("MPASS_BINARY_DIR");
  if (!bin_dir) fail_msg("MPASS_BINARY_DIR is not set (CTest sets it)");
  char bin[1024], buf[4096], lease_s[16];
  snprintf(bin, sizeof bin, "%s/mpass", bin_dir);
  snprintf(buf, sizeof buf, "%s/worker%d", api->dir, index);
  w->data = strdup(buf);
  snprintf(buf, sizeof buf, "%s/worker%d.log", api->dir, index);
  w->log = strdup(buf);
  snprintf(lease_s, sizeof lease_s, "%d", lease);
  const pid_t parent = getpid();
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    h_die_with_parent(parent);
    int devnull = open("/dev/null", O_WRONLY);
    int log = open(w->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (devnull >= 0) dup2(devnull, 1);
    if (log >= 0) dup2(log, 2);
    char *argv[] = {bin, "--threads", "1", "--models", api->models, "worker", "--db", api->db, "--data", w->data,
                    "--lease-seconds", lease_s, NULL};
    execv(bin, argv);
    _exit(127);
  }
  w->pid = pid;
}

static void c_worker_stop(worker *w, int sig) {
  if (w->pid) {
    kill(w->pid, sig);
    waitpid(w->pid, NULL, 0);
    w->pid = 0;
  }
}

static void c_worker_free(worker *w) {
  c_worker_stop(w, SIGKILL);
  free(w->data), free(w->log);
}

/* One value of a query on the cluster's database (caller frees); NULL when no row. */
static char *c_query(const server *api, const char *sql) {
  PGconn *c = PQconnectdb(api->db);
  if (PQstatus(c) != CONNECTION_OK) fail_msg("cannot connect to %s: %s", api->db, PQerrorMessage(c));
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) fail_msg("%s: %s", sql, PQerrorMessage(c));
  char *v = PQntuples(r) > 0 && !PQgetisnull(r, 0, 0) ? strdup(PQgetvalue(r, 0, 0)) : NULL;
  PQclear(r), PQfinish(c);
  return v;
}

static long c_query_long(const server *api, const char *sql) {
  char *v = c_query(api, sql);
  long n = v ? atol(v) : -1;
  free(v);
  return n;
}

/* how many lines of the file contain needle */
static int c_count_lines(const char *path, const char *needle) {
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  char line[4096];
  int n = 0;
  while (fgets(line, sizeof line, f))
    if (strstr(line, needle)) n++;
  fclose(f);
  return n;
}

#endif
