/* Wall-clock time for timings and progress: seconds on the monotonic clock (never goes back). */
#ifndef MP_CORE_CLOCK_H
#define MP_CORE_CLOCK_H

double mp_now(void);

#endif
