"""The seed programs' task functions (/work/shared/seeds), copied verbatim where the
tutorials are Python 3, registered with @task. Each is what a `Process(target=...)` or a
`Pool` ran in the original; here wasmpool runs it in a sandboxed worker.

    wasmpool tasks examples/py-seeds
    wasmpool run examples/py-seeds task1 '"one"'
    wasmpool map examples/py-seeds job --range 10
"""

import os
import random
import time

import wasmpool_guest
from wasmpool_guest import task


# Seed 000: three processes say hello.
@task
def task1(msg):
    print('task1: hello, %s' % msg)
    time.sleep(1)


@task
def task2(msg):
    print('task2: hello, %s' % msg)
    time.sleep(1)


@task
def task3(msg):
    print('task3: hello, %s' % msg)
    time.sleep(1)


# Seed 001: a Process per name, and a Pool of tasks that sleep a random while.
@task
def run_proc(name):
    print( 'child process %s (%s) Runing' %(name,os.getpid()))


@task
def run_task(name) :
    start_time = time.time()
    print( 'Task %s (pid = %s) is runnig...' %(name,os.getpid()))
    time.sleep( random.random() * 3 )
    end_time = time.time()
    print( 'Task %s end cost %ss' %(name,end_time-start_time) )


# Seed 002: a process per number, and Pool.map of a square (the tutorial's `def job():`
# lacks its parameter; it is given one, as its `pool.map(job, range(10))` needs).
@wasmpool_guest.task(name="process")
def process(num):
    print('Process:', num)


@task
def job(x):
    return x**2


# Seed 004: a CPU-bound countdown.
@task
def process_task(data):
     res = data ** 3

     while res > 0:
         res -= 1

     return


# Not from a seed: what a failing task looks like.
@task
def divide(a, b):
    return a / b
