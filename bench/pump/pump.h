/* The three pumps and what they share: the start handshake and the guest's own clock. */
#ifndef PUMP_PUMP_H
#define PUMP_PUMP_H
#include <stdint.h>

/* What the guest spent: all TSC cycles of the measured window, and those it was doing its
 * own work (building requests, checking results, notifying) rather than polling an empty
 * used ring.  The queue's kick_tsc says how much of the busy time went into notifications
 * (an exit each; the vCPU may also lose its host CPU to the device thread it wakes). */
struct clock { uint64_t start, total, busy; };

/* Print "PUMP-READY job=JOB", then wait for the host's byte on the serial line (unless
 * pump.wait=0): the host reads the VMM's CPU times in between.  A pump prints the short
 * "PUMP-DONE" line as soon as its last request completed (the host reads the CPU times
 * again), then its "PUMP-END job=JOB key=value ..." report. */
void wait_for_host(const char *job);
/* "PUMP-DONE", then (unless pump.wait=0) wait for the host's byte. */
void pump_done(void);
/* " tsc_total=... tsc_busy=... irqs=..." for the PUMP-END line. */
void put_clock(const struct clock *c);

void blk_pump(void);      /* ring 3 */
void net_pump(void);      /* ring 3 */
void exit_pump(void);     /* ring 0 or 3 (pump.ring) */
#endif
