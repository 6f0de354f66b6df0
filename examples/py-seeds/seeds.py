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


# Seed 004, with shared objects. The tutorial's functions share names (`process_task`
# five times): each is registered under a name of its own, and the host passes the objects
# as its `main()` does (a queue, a pipe's two ends as a tuple, a Manager dict, a lock).

# A queue carries each result back.
@task(name="queue_process_task")
def process_task(data, queue):
    """
    进程任务
    queue: 队列
    """
    print('测试多进程任务：%s, 当前进程号：%s, 父进程号为: %s' % (data, os.getpid(), os.getppid()))
    res = data ** 3
    #queue.put("data：%s deal result is %s" % (data, res))
    queue.put({data: res})

    while res > 0:
        res -= 1
    print('多进程任务结束：%s, 当前进程号为: %s' % (data, os.getpid()))

    return


# Producer and consumer over a queue.
@task
def consumer(queue):
    while True:
        task = queue.get()
        if task is None:
            break
        print(task)

    return


@task
def producer(queue):

    for i in range(5):
        queue.put("work：%s" % i)

    return


# Both ends of a pipe, passed as a tuple.
@task(name="pipe_process_task")
def process_task(data, p):
    """
    进程任务
    p: Pipe生成的双向管道
    conn1,conn2都传过去。不用的就给关闭掉
    """
    conn1, conn2 = p
    conn2.close()

    conn1.send('你好主进程, the data is %s' % data)
    print(conn1.recv())
    conn1.close()

    return


# Producer and consumer over a pipe.
@task(name="pipe_consumer")
def consumer(name, p):
    conn1, conn2 = p
    conn1.close()
    while True:
        try:
            ret = conn2.recv()
            print("%s work is %s" % (name, ret))
        except Exception:
            print("===============")
            break

    conn2.close()


@task(name="pipe_producer")
def producer(p):
    conn1, conn2 = p
    conn2.close()
    for i in range(5):
        conn1.send("doing：%s" % i)
    conn1.close()


# A Manager dict shared by the processes.
@task(name="manager_process_task")
def process_task(data, queue, share_data):
    """
    进程任务
    queue: 队列
    """
    print('测试多进程任务：%s, 当前进程号：%s, 父进程号为: %s' % (data, os.getpid(), os.getppid()))
    res = data ** 3
    share_data["count"] -= 1
    share_data[data] = res

    while res > 0:
        res -= 1

    print('多进程任务结束：%s, 当前进程号为: %s' % (data, os.getpid()))

    return


# The lock-protected counter.
@task(name="lock_process_task")
def process_task(data, share_data, lc):
    """
    进程任务
    queue: 队列
    """
    lc.acquire()  # 锁住
    res = data ** 3
    share_data[data] = res

    for _ in range(5):
        time.sleep(0.1)
        share_data["count"] += data
        print("share_data count is %s " % share_data["count"])
    lc.release()    # 释放
    return


# Not from a seed: what a failing task looks like.
@task
def divide(a, b):
    return a / b
