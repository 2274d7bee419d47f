/* timeutil.h -- monotonic and wall clocks in seconds (private). */
#ifndef DBX_UTIL_TIME_H
#define DBX_UTIL_TIME_H
#include <time.h>

static inline double time_mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline double time_wall(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
#endif
