package main

const (
	sysAddKey     = 217
	sysRequestKey = 218
	sysKeyctl     = 219
)
