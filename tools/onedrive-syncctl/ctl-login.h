/* `onedrive-syncctl login`: the device-code flow of the Graph client, and the token file. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* The `login` command: @argv[0] is "login". Returns an exit code (CtlExit). */
int ctl_login_main (int argc, char **argv);

G_END_DECLS
