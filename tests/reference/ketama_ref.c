/* Reference for the gateway's consistent_hash balancer: the real libmemcached, weighted
 * ketama. Built and run by tests/it/balance.rs.
 *
 * usage: ketama_ref HOST:PORT:WEIGHT ... < keys   (one key per line)
 * prints, per key, the HOST:PORT libmemcached picks. */
#include <libmemcached/memcached.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  memcached_st *memc = memcached_create(NULL);
  if (!memc) return 2;
  if (memcached_behavior_set(memc, MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED, 1) != MEMCACHED_SUCCESS) return 3;
  for (int i = 1; i < argc; i++) {
    char host[256];
    unsigned port, weight;
    if (sscanf(argv[i], "%255[^:]:%u:%u", host, &port, &weight) != 3) return 4;
    if (memcached_server_add_with_weight(memc, host, (in_port_t)port, weight) != MEMCACHED_SUCCESS) return 5;
  }
  char line[4096];
  while (fgets(line, sizeof line, stdin)) {
    size_t n = strcspn(line, "\n");
    line[n] = 0;
    uint32_t idx = memcached_generate_hash(memc, line, n);
    const memcached_instance_st *s = memcached_server_instance_by_position(memc, idx);
    printf("%s:%u\n", memcached_server_name(s), (unsigned)memcached_server_port(s));
  }
  memcached_free(memc);
  return 0;
}
