/*
 * srv_server.h - the entry point of `nanoinfer serve`, the OpenAI-compatible
 * HTTP daemon built from server/http/ (see srv_server.c for its threads and
 * crossings, srv_internal.h for ownership and lifetimes).
 */
#ifndef NI_SRV_SERVER_H
#define NI_SRV_SERVER_H

/* Parses argv (flags, --config FILE, environment) into a srv_config, loads
 * the model on the engine thread and serves until SIGTERM/SIGINT. Returns
 * the process exit status: 0 after a clean shutdown, 1 on a runtime error
 * (one line on stderr), 2 on a usage error. */
int srv_cmd_serve(int argc, char **argv);

#endif
