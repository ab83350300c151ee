/* What plain Lua lacks for sharing state between processes on one
 * machine (token stores, rate-limit budgets): a real sleep, sub-second
 * clocks, an advisory file lock, and an atomic file replace. */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "compat.h"
#include "system.h"

#define LOCK_MT "bitrix24.lock"

typedef struct {
    int fd;
} b24_lock;

static double clock_seconds(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* core.now() -> seconds since the epoch, with a fraction. */
static int sys_now(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)clock_seconds(CLOCK_REALTIME));
    return 1;
}

double b24_monotonic(void)
{
    return clock_seconds(CLOCK_MONOTONIC);
}

/* core.monotonic() -> seconds on a clock that never jumps back. */
static int sys_monotonic(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)b24_monotonic());
    return 1;
}

static void sleep_seconds(double s)
{
    struct timespec ts;
    if (!(s > 0))
        return;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

/* core.sleep(seconds): blocks the process; no busy wait. */
static int sys_sleep(lua_State *L)
{
    double s = (double)luaL_checknumber(L, 1);
    luaL_argcheck(L, s >= 0 && s <= B24_MAX_SECONDS, 1, "seconds must be in [0, 86400]");
    sleep_seconds(s);
    return 0;
}

static void lock_release(b24_lock *k)
{
    if (k->fd >= 0) {
        flock(k->fd, LOCK_UN);
        close(k->fd);
        k->fd = -1;
    }
}

static int lock_gc(lua_State *L)
{
    lock_release(luaL_checkudata(L, 1, LOCK_MT));
    return 0;
}

/* core.lock(path [, timeout]) -> lock | nil, message
 * An exclusive flock on path (created 0600 if missing), waited for up
 * to timeout seconds (default 30, at most 86400). Released by
 * lock:unlock(), by garbage collection, by <close>, or when the process
 * dies. The lock file must be a regular file and is never reached
 * through a symlink: in a shared directory another user could plant
 * one pointing at a file of ours, which O_CREAT would then create. */
static int sys_lock(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    double timeout = (double)luaL_optnumber(L, 2, 30);
    double waited = 0, step = 0.005;
    struct stat st;
    b24_lock *k;

    luaL_argcheck(L, timeout >= 0 && timeout <= B24_MAX_SECONDS, 2,
                  "seconds must be in [0, 86400]");
    k = lua_newuserdata(L, sizeof *k);
    k->fd = -1;
    luaL_getmetatable(L, LOCK_MT);
    lua_setmetatable(L, -2);
    k->fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (k->fd < 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "cannot open lock file %s: %s", path, strerror(errno));
        return 2;
    }
    if (fstat(k->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        lock_release(k);
        lua_pushnil(L);
        lua_pushfstring(L, "cannot open lock file %s: not a regular file", path);
        return 2;
    }
    while (flock(k->fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno != EWOULDBLOCK && errno != EINTR) {
            int e = errno;
            lock_release(k);
            lua_pushnil(L);
            lua_pushfstring(L, "cannot lock %s: %s", path, strerror(e));
            return 2;
        }
        if (waited >= timeout) {
            lock_release(k);
            lua_pushnil(L);
            lua_pushfstring(L, "timed out after %f s waiting for the lock on %s",
                            timeout, path);
            return 2;
        }
        sleep_seconds(step);
        waited += step;
        if (step < 0.05)
            step *= 2;
    }
    return 1;
}

/* Removes path's temporary files ("<path>.tmp.<pid>") left by writers
 * that died mid-write (kill -9): a file whose pid no longer runs. Those
 * of live writers are theirs to finish. Best effort: errors are ignored. */
static void remove_stale_temps(const char *path)
{
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    size_t dirlen = slash ? (size_t)(slash - path) : 0;
    size_t baselen = strlen(base);
    char dir[4096], stale[4096];
    DIR *d;
    struct dirent *e;

    if (dirlen + 1 >= sizeof dir)
        return;
    if (slash) {
        memcpy(dir, path, dirlen ? dirlen : 1);
        dir[dirlen ? dirlen : 1] = '\0';
    } else {
        strcpy(dir, ".");
    }
    d = opendir(dir);
    if (!d)
        return;
    while ((e = readdir(d)) != NULL) {
        const char *pidtext = e->d_name + baselen + 5;
        char *end;
        long pid;
        if (strncmp(e->d_name, base, baselen) != 0 || strncmp(e->d_name + baselen, ".tmp.", 5) != 0)
            continue;
        pid = strtol(pidtext, &end, 10);
        if (end == pidtext || *end != '\0' || pid <= 0)
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        if ((size_t)snprintf(stale, sizeof stale, "%s/%s", dir, e->d_name) < sizeof stale)
            unlink(stale);
    }
    closedir(d);
}

/* The directory holding path, flushed so a rename into it survives a
 * power loss: without it the old file (a refresh token already rotated
 * away) can come back. Filesystems that cannot sync a directory say
 * EINVAL; that is no failure of ours. */
static int sync_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char dir[4096];
    int fd, e = 0;

    if (!slash) {
        strcpy(dir, ".");
    } else {
        size_t n = slash == path ? 1 : (size_t)(slash - path);
        if (n >= sizeof dir)
            return ENAMETOOLONG;
        memcpy(dir, path, n);
        dir[n] = '\0';
    }
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    if (fsync(fd) != 0 && errno != EINVAL)
        e = errno;
    close(fd);
    return e;
}

/* core.write_file(path, data [, clean]): the new content appears whole or not at
 * all (a temporary file beside it, flushed, renamed over it, then the
 * directory flushed), and is readable by the owner only, since it may hold tokens. The temporary
 * file is created anew (O_EXCL, 0600): reusing a leftover of the same
 * name would keep that file's mode (a stale 0644 one made a token store
 * world-readable). Callers hold the store's lock, so two writers never
 * share a name; with clean, leftovers of dead writers are removed first
 * (a directory scan: frequent writers ask for it once). */
static int sys_write_file(lua_State *L)
{
    size_t len, done = 0;
    const char *path = luaL_checkstring(L, 1);
    const char *data = luaL_checklstring(L, 2, &len);
    const char *tmp = lua_pushfstring(L, "%s.tmp.%d", path, (int)getpid());
    int fd, e = 0;

    if (lua_toboolean(L, 3))
        remove_stale_temps(path);
    unlink(tmp);   /* ours, left by an earlier process with this pid */
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        e = errno;
        goto fail;
    }
    while (done < len) {
        ssize_t n = write(fd, data + done, len - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            e = errno;
            break;
        }
        done += (size_t)n;
    }
    if (!e && fsync(fd) != 0)
        e = errno;
    if (close(fd) != 0 && !e)
        e = errno;
    if (!e && rename(tmp, path) != 0)
        e = errno;
    if (!e) {
        /* The new content is in place; a failed directory sync only
         * leaves its durability in doubt, and is said so. */
        e = sync_dir(path);
        if (!e) {
            lua_pushboolean(L, 1);
            return 1;
        }
        goto fail;
    }
    unlink(tmp);
fail:
    lua_pushnil(L);
    lua_pushfstring(L, "cannot write %s: %s", path, strerror(e));
    return 2;
}

static const luaL_Reg lock_methods[] = {
    {"unlock", lock_gc},
    {NULL, NULL}
};

static const luaL_Reg functions[] = {
    {"now", sys_now},
    {"monotonic", sys_monotonic},
    {"sleep", sys_sleep},
    {"lock", sys_lock},
    {"write_file", sys_write_file},
    {NULL, NULL}
};

/* Registers the functions into the module table on the top of the stack. */
void b24_system_register(lua_State *L)
{
    luaL_newmetatable(L, LOCK_MT);
    lua_pushcfunction(L, lock_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, lock_gc);
    lua_setfield(L, -2, "__close");
    lua_newtable(L);
    b24_setfuncs(L, lock_methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    b24_setfuncs(L, functions, 0);
}
